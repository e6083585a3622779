"""TokenMap: what every position of a video prompt is.

A TokenMap knows, for one prompt of N positions, the role of each position, the temporal slot
("frame") and (t, h, w) grid cell of every video token, and the spans of the question, its
options, the true and false options and the last position. Positions are LongTensors, so they
index activations directly: ``cache["blocks.3.hook_resid_post"][0, tm.frame(2)]``.

Qwen-VL models merge ``temporal_patch_size`` input frames into one temporal slot. ``n_frames``
and ``frame(i)`` count temporal slots (what the token grid has); ``n_input_frames`` counts the
frames given to the processor, and ``input_frames(i)`` says which of them slot i covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import torch
from jaxtyping import Int

Positions = Int[torch.Tensor, "n"]

#: Roles, in the order they usually appear. "system" and "text" are the untyped groups (never
#: blocked); "frame_text" is text inside the video that belongs to the frame after it
#: (timestamps, ``Frame{i}:``, commas between frames); "video_separator" tokens (newline
#: features, vision start/end markers) sit in or around the video but belong to no frame; "response" marks teacher-forced generated tokens
#: before the last position (the open-ended analysis).
ROLES = ("system", "video", "frame_text", "video_separator", "question", "option", "text", "response", "last")


class PromptLayoutError(ValueError):
    """The prompt's video placeholders or text spans do not match what the model expects."""


@dataclass(frozen=True)
class TextSpans:
    """Token spans [start, stop) of the question block in a prompt (expanded positions)."""

    question_block: tuple[int, int] | None  # "Question:" through the end of the last option
    question_text: tuple[int, int] | None  # the raw question only
    options: tuple[tuple[int, int], ...] = ()  # each "(X) text"


@dataclass
class TokenMap:
    """Roles, frames and grid cells of every position of one video prompt.

    Attributes:
        role: per-position role name (see ROLES), length N.
        frame_of: (N,) temporal slot of each video token and of each frame's text (``Time 1.5s:``,
            ``Frame2:``, the separators between frames), -1 elsewhere.
        cell: (N, 3) (t, h, w) grid cell of each video token, -1 elsewhere.
        grid_shape: (T, H, W) of the token grid, T in temporal slots. A frame may hold fewer
            than H * W tokens (VideoLLaMA3's token compression drops repeated patches).
        n_input_frames: frames the processor received (T * temporal_patch_size).
        temporal_patch_size: input frames merged into one temporal slot (1 for LLaVA models).
        spans: token spans of the question block, question text and options.
        answer: index of the true option, or None.
    """

    role: list[str]
    frame_of: Int[torch.Tensor, "N"]
    cell: Int[torch.Tensor, "N 3"]
    grid_shape: tuple[int, int, int]
    n_input_frames: int
    temporal_patch_size: int = 1
    spans: TextSpans = field(default_factory=lambda: TextSpans(None, None))
    answer: int | None = None

    def __post_init__(self) -> None:
        self.grid_shape = tuple(int(x) for x in self.grid_shape)

    # ----- sizes -------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return len(self.role)

    @property
    def n_frames(self) -> int:
        """Temporal slots of the token grid (what ``frame(i)`` indexes)."""
        return self.grid_shape[0]

    @property
    def grid(self) -> Int[torch.Tensor, "T H W"]:
        """The position of each grid cell's token, -1 where a frame has no token for the cell."""
        grid = torch.full(self.grid_shape, -1, dtype=torch.long)
        video = self.video
        t, h, w = self.cell[video].T
        grid[t, h, w] = video
        return grid

    @property
    def tokens_per_frame(self) -> int:
        """Cells per frame of the grid (H * W); see ``frame_sizes`` for what each frame holds."""
        return self.grid_shape[1] * self.grid_shape[2]

    @property
    def frame_sizes(self) -> list[int]:
        """Video tokens of each temporal slot."""
        slots = self.frame_of[self.video]
        return torch.bincount(slots, minlength=self.n_frames).tolist()

    @property
    def is_dense(self) -> bool:
        """Whether every grid cell has its token (no frame compressed)."""
        return len(self.video) == math.prod(self.grid_shape)

    # ----- groups ------------------------------------------------------------------------
    def positions(self, role: str) -> Positions:
        """All positions with the given role, ascending."""
        if role not in ROLES:
            raise KeyError(f"unknown role {role!r}; roles are {ROLES}")
        return torch.tensor([i for i, r in enumerate(self.role) if r == role], dtype=torch.long)

    @property
    def video(self) -> Positions:
        """All video tokens (the positions that carry visual features), in sequence order."""
        return self.positions("video")

    @property
    def frame_text(self) -> Positions:
        """Text that belongs to a frame (timestamps, ``Frame{i}:``, separators between frames)."""
        return self.positions("frame_text")

    @property
    def video_group(self) -> Positions:
        """The video group of the knockout targets: video tokens plus their frames' text."""
        return (self.frame_of >= 0).nonzero().flatten()

    @property
    def video_separators(self) -> Positions:
        return self.positions("video_separator")

    def _slot(self, i: int) -> int:
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range: the prompt has {self.n_frames} frames")
        return i % self.n_frames

    def frame(self, i: int) -> Positions:
        """Video tokens of temporal slot i, in row-major (h, w) order."""
        slot = self.grid[self._slot(i)].reshape(-1)
        return slot[slot >= 0]

    def frame_group(self, i: int) -> Positions:
        """Temporal slot i's video tokens and text, in sequence order (what cross-frame blocks)."""
        return (self.frame_of == self._slot(i)).nonzero().flatten()

    def input_frames(self, i: int) -> list[int]:
        """Indices of the input frames that temporal slot i was built from."""
        p = self.temporal_patch_size
        return list(range(i * p, (i + 1) * p))

    def _span(self, span: tuple[int, int] | None, what: str) -> Positions:
        if span is None:
            raise AttributeError(f"this prompt has no {what} span (was it built with options?)")
        return torch.arange(*span)

    @property
    def question(self) -> Positions:
        """From ``Question:`` through the end of the last option (the question with options)."""
        return self._span(self.spans.question_block, "question")

    @property
    def question_without_options(self) -> Positions:
        return self._span(self.spans.question_text, "question text")

    @property
    def options(self) -> list[Positions]:
        return [torch.arange(*s) for s in self.spans.options]

    @property
    def true_option(self) -> Positions:
        if self.answer is None:
            raise AttributeError("this prompt has no answer: pass answer=... to prepare()")
        return self.options[self.answer]

    @property
    def false_options(self) -> Positions:
        if self.answer is None:
            raise AttributeError("this prompt has no answer: pass answer=... to prepare()")
        rest = [o for i, o in enumerate(self.options) if i != self.answer]
        return torch.cat(rest) if rest else torch.empty(0, dtype=torch.long)

    @property
    def last(self) -> Positions:
        return torch.tensor([self.n_positions - 1])

    @property
    def response(self) -> Positions:
        """Teacher-forced generated tokens before the last position (see ``VideoPrompt.extend``)."""
        return self.positions("response")

    def extended(self, n_new: int, num_open_tokens: int = 0) -> "TokenMap":
        """This map with ``n_new`` appended positions: the old last position becomes untyped
        text, the new ones "response" and the final one "last"; the ``num_open_tokens``
        response tokens right before the last stay untyped (at least one stays typed)."""
        if n_new == 0:
            return self
        role = list(self.role)
        role[-1] = "text"
        n_response = n_new - 1
        typed = max(min(1, n_response), n_response - num_open_tokens)
        role += ["response"] * typed + ["text"] * (n_response - typed) + ["last"]
        frame_of = torch.cat([self.frame_of, self.frame_of.new_full((n_new,), -1)])
        cell = torch.cat([self.cell, self.cell.new_full((n_new, 3), -1)])
        return TokenMap(role, frame_of, cell, self.grid_shape, self.n_input_frames, self.temporal_patch_size,
                        self.spans, self.answer)  # fmt: skip

    def __repr__(self) -> str:
        counts = {r: self.role.count(r) for r in ROLES if self.role.count(r)}
        t, h, w = self.grid_shape
        sizes = "" if self.is_dense else f", frame_sizes={self.frame_sizes}"
        return (
            f"TokenMap(N={self.n_positions}, grid=(T={t}, H={h}, W={w}){sizes}, "
            f"input_frames={self.n_input_frames}, roles={counts})"
        )


def dense_cells(grid_shape: tuple[int, int, int]) -> Int[torch.Tensor, "n 3"]:
    """(t, h, w) of every cell of a full grid, frame by frame, row-major within a frame."""
    t, h, w = grid_shape
    return torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 3)


def build_token_map(
    n_positions: int,
    video_slots: Positions,
    grid_shape: tuple[int, int, int],
    separators: Positions,
    spans: TextSpans,
    n_input_frames: int,
    temporal_patch_size: int = 1,
    answer: int | None = None,
    cells: Int[torch.Tensor, "n 3"] | None = None,
    frame_text: tuple[Positions, Positions] | None = None,
) -> TokenMap:
    """Assemble a TokenMap from already located positions.

    Args:
        n_positions: sequence length N.
        video_slots: positions carrying video features, in sequence order.
        grid_shape: (T, H, W) of the video token grid.
        separators: positions of video separator tokens (newline features, start/end markers).
        spans: question / option token spans (expanded positions).
        cells: (t, h, w) of each video slot; default: a full grid, frame-major and row-major
            (then there must be T * H * W slots).
        frame_text: (positions, their temporal slots) of text that belongs to a frame.
    """
    if cells is None:
        t, h, w = grid_shape
        if len(video_slots) != t * h * w:
            raise PromptLayoutError(
                f"the prompt has {len(video_slots)} video feature positions but the video gives "
                f"{t}x{h}x{w} = {t * h * w} tokens; build prompts with model.prepare(), which lets "
                f"the processor expand the video placeholder."
            )
        cells = dense_cells(grid_shape)
    text_positions, text_slots = frame_text if frame_text is not None else (torch.empty(0, dtype=torch.long),) * 2
    role = ["text"] * n_positions
    grouped = torch.cat([video_slots, text_positions])
    first_video = int(grouped.min()) if len(grouped) else n_positions
    for i in range(min(first_video, n_positions)):
        role[i] = "system"
    for i in video_slots.tolist():
        role[i] = "video"
    for i in text_positions.tolist():
        role[i] = "frame_text"
    for i in separators.tolist():
        role[i] = "video_separator"
    if spans.question_text is not None:
        for i in range(*spans.question_text):
            role[i] = "question"
    for start, stop in spans.options:
        for i in range(start, stop):
            role[i] = "option"
    role[n_positions - 1] = "last"
    frame_of = torch.full((n_positions,), -1, dtype=torch.long)
    cell = torch.full((n_positions, 3), -1, dtype=torch.long)
    frame_of[video_slots] = cells[:, 0]
    frame_of[text_positions] = text_slots
    cell[video_slots] = cells
    return TokenMap(role, frame_of, cell, grid_shape, n_input_frames, temporal_patch_size, spans, answer)
