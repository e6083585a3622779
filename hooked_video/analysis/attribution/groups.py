"""The edge groups an attribution estimates, per granularity, as per-layer effects on log P(answer).

- "conditions": the knockout targets' conditions (``flow.TARGETS``, or your own), the rows of
  ``flow.sweep``;
- "frame-pairs": frame i -/-> frame j for every i < j, and frame i -/-> the question;
- "tokens": each question and option token -/-> the last position;
- "cells": each video cell (frame, row, column) -/-> the last position.

Each group is returned with its labels (``condition`` and the columns that place it).
"""

from __future__ import annotations

from typing import Mapping

import torch

from hooked_video.analysis.attribution.estimates import key_effects, mask_effects, pair_effects
from hooked_video.analysis.attribution.gradients import PatternGradients
from hooked_video.model.prompt import VideoPrompt

GRANULARITIES = ("conditions", "frame-pairs", "tokens", "cells")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def condition_effects(grads: PatternGradients, prompt: VideoPrompt, targets: Mapping[str, Mapping],
                      per_head: bool) -> list[tuple[dict, torch.Tensor]]:  # fmt: skip
    """(labels, per-layer effects) of every condition of ``targets``."""
    tm = prompt.token_map
    labels = [{"target": target, "condition": name} for target, conditions in targets.items() for name in conditions]
    masks = [targets[label["target"]][label["condition"]](tm).mask for label in labels]
    return list(zip(labels, mask_effects(grads, masks, per_head)))


def frame_pair_effects(grads: PatternGradients, prompt: VideoPrompt, per_head: bool) -> list[tuple[dict, torch.Tensor]]:
    """frame i -/-> frame j (i < j) and frame i -/-> question, per layer."""
    tm = prompt.token_map
    frames = [tm.frame(i) for i in range(tm.n_frames)]
    effects = pair_effects(grads, [*frames, tm.question], frames, per_head)  # (layer, [head,] T + 1, T)
    out = []
    for j in range(tm.n_frames + 1):
        for i in range(min(j, tm.n_frames)):
            name = f"frame {i}->question" if j == tm.n_frames else f"frame {i}->frame {j}"
            labels = {"target": "frame-pairs", "condition": name, "source_frame": i, "target_frame": -1 if j == tm.n_frames else j}
            out.append((labels, effects[..., j, i]))
    return out


def token_effects(grads: PatternGradients, prompt: VideoPrompt, per_head: bool) -> list[tuple[dict, torch.Tensor]]:
    """Each question / option token -/-> the last position, per layer."""
    tm = prompt.token_map
    positions = tm.question
    effects = key_effects(grads, prompt.n_positions - 1, positions, per_head)  # (layer, [head,] keys)
    tokens = prompt.str_tokens
    return [({"target": "tokens", "condition": f"{int(p)}:{tokens[int(p)]}->last", "source_position": int(p)}, effects[..., k])
            for k, p in enumerate(positions.tolist())]  # fmt: skip


def cell_effects(grads: PatternGradients, prompt: VideoPrompt, per_head: bool) -> list[tuple[dict, torch.Tensor]]:
    """Each video cell -/-> the last position, per layer, placed at its (frame, row, column)."""
    tm = prompt.token_map
    positions = tm.video
    effects = key_effects(grads, prompt.n_positions - 1, positions, per_head)
    out = []
    for k, p in enumerate(positions.tolist()):
        t, h, w = (int(x) for x in tm.cell[p])
        out.append(({"target": "cells", "condition": f"cell {t},{h},{w}->last", "source_position": p, "source_frame": t,
                     "source_row": h, "source_col": w}, effects[..., k]))  # fmt: skip
    return out


def effects_of(granularity: str, grads: PatternGradients, prompt: VideoPrompt, targets,
               per_head: bool) -> list[tuple[dict, torch.Tensor]]:  # fmt: skip
    """The groups of ``granularity`` with their first-order per-layer effects."""
    if granularity == "conditions":
        return condition_effects(grads, prompt, targets, per_head)
    return {"frame-pairs": frame_pair_effects, "tokens": token_effects, "cells": cell_effects}[granularity](
        grads, prompt, per_head)
