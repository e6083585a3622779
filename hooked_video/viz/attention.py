"""Attention over video prompts: frame-labelled CircuitsVis views and frame-grid heatmaps.

A thousand video tokens do not fit an attention view, so video tokens can be grouped per frame
(or per grid row of a frame): a group's column is the attention mass its tokens receive (sum
over keys), its row the mean distribution of its queries, so every row still sums to one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from hooked_video.capture import capture
from hooked_video.tokens import TokenMap
from hooked_video.viz.html import InteractiveFigure, StaticFigure

AUTO_AGGREGATE_ABOVE = 512  # positions; longer prompts are grouped per frame by default


def token_labels(tm: TokenMap, str_tokens: Sequence[str]) -> list[str]:
    """Token strings with video tokens labelled by frame and cell: ``[f2 3,5]``."""
    labels = list(str_tokens)
    for position in tm.video.tolist():
        t, h, w = tm.cell[position].tolist()
        labels[position] = f"[f{t} {h},{w}]"
    return labels


def token_groups(tm: TokenMap, str_tokens: Sequence[str], aggregate: str | None) -> tuple[list[str], torch.Tensor]:
    """(labels, group index per position) for aggregate None, "frame" or "row"."""
    labels = token_labels(tm, str_tokens)
    if aggregate is None:
        return labels, torch.arange(tm.n_positions)
    if aggregate not in ("frame", "row"):
        raise ValueError(f"aggregate must be None, 'frame' or 'row', got {aggregate!r}")
    group = torch.empty(tm.n_positions, dtype=torch.long)
    names: list[str] = []
    seen: dict[tuple, int] = {}
    for position in range(tm.n_positions):
        t, h, _ = tm.cell[position].tolist()
        if t < 0:
            key, name = ("pos", position), labels[position]
        else:
            key = ("frame", t) if aggregate == "frame" else ("row", t, h)
            name = f"[frame {t}]" if aggregate == "frame" else f"[f{t} row {h}]"
        if key not in seen:
            seen[key] = len(names)
            names.append(name)
        group[position] = seen[key]
    return names, group


def aggregate_pattern(pattern: Float[torch.Tensor, "head q k"], group: torch.Tensor) -> Float[torch.Tensor, "head gq gk"]:
    """Sum attention over key groups, average it over query groups."""
    n_groups = int(group.max()) + 1
    onehot = torch.nn.functional.one_hot(group.to(pattern.device), n_groups).to(pattern.dtype)  # (N, G)
    keys = pattern @ onehot  # (H, N, G)
    mean = onehot / onehot.sum(0, keepdim=True)
    return torch.einsum("ng,hnk->hgk", mean, keys)


def capture_patterns(model, prompt, layers: Sequence[int], reduce=None, fwd_hooks=()) -> dict[int, torch.Tensor]:
    """Attention patterns of ``layers`` for batch item 0, each passed through ``reduce`` (e.g. a
    row selection or an aggregation) inside the hook, so nothing of size L x H x N x N is kept."""
    names = {l: f"blocks.{l}.attn.hook_pattern" for l in layers}
    kept, _ = capture(model, prompt, list(names.values()), lambda p: (reduce(p.float()) if reduce else p.float()).cpu(), fwd_hooks)
    return {l: kept[name] for l, name in names.items()}


def attention_heads(model, prompt, layer: int, aggregate: str | None = "auto", fwd_hooks=()) -> InteractiveFigure:
    """CircuitsVis ``attention_heads`` of one layer with frame-labelled tokens.

    Args:
        aggregate: "frame", "row" (per grid row of each frame), None (every token), or "auto":
            per frame when the prompt has more than 512 positions.
        fwd_hooks: extra hooks for the run (e.g. ``knockout.hooks(...)`` to see a knockout).
    """
    return _attention_view("AttentionHeads", model, prompt, layer, aggregate, fwd_hooks)


def attention_pattern(model, prompt, layer: int, head: int, aggregate: str | None = "auto", fwd_hooks=()) -> InteractiveFigure:
    """CircuitsVis ``attention_pattern`` of one head, tokens labelled as in ``attention_heads``."""
    return _attention_view("AttentionPattern", model, prompt, layer, aggregate, fwd_hooks, head=head)


def _attention_view(component, model, prompt, layer, aggregate, fwd_hooks, head=None) -> InteractiveFigure:
    tm = prompt.token_map
    if aggregate == "auto":
        aggregate = "frame" if tm.n_positions > AUTO_AGGREGATE_ABOVE else None
    labels, group = token_groups(tm, prompt.str_tokens, aggregate)
    reduce = (lambda p: aggregate_pattern(p, group)) if aggregate else None
    pattern = capture_patterns(model, prompt, [layer], reduce, fwd_hooks)[layer]
    title = f"layer {layer}" + (f", head {head}" if head is not None else "") + (f", video per {aggregate}" if aggregate else "")
    if head is not None:
        return InteractiveFigure(component, title, tokens=labels, attention=pattern[head])
    return InteractiveFigure(component, title, tokens=labels, attention=pattern)


# ----- frame-grid heatmap (Fig. 6) ---------------------------------------------------------------
def attention_to_video(model, prompt, queries: Sequence[int] | torch.Tensor, layers: Sequence[int], heads: str = "mean",
                       fwd_hooks=()) -> Float[torch.Tensor, "T H W"]:  # fmt: skip
    """Attention from ``queries`` to every video token on the (T, H, W) grid: heads averaged (or
    max), then averaged over queries and layers."""
    if heads not in ("mean", "max"):
        raise ValueError("heads must be 'mean' or 'max'")
    tm = prompt.token_map
    queries = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
    keys = tm.grid.reshape(-1)

    def reduce(pattern):  # (H, N, N) -> (T*H*W,)
        rows = pattern[:, queries.to(pattern.device)][:, :, keys.to(pattern.device)]
        rows = rows.mean(0) if heads == "mean" else rows.amax(0)
        return rows.mean(0)

    per_layer = capture_patterns(model, prompt, layers, reduce, fwd_hooks)
    return torch.stack([per_layer[l] for l in layers]).mean(0).reshape(tm.grid.shape)


def frame_grid_heatmap(maps: Mapping[str, torch.Tensor] | torch.Tensor, title: str = "", log: bool = True) -> Figure:
    """Draw (T, H, W) attention maps as (grid rows) x (frames x grid columns), one row of panels
    per map (e.g. {"baseline": ..., "cross-frame knockout": ...}), on a shared log colour scale."""
    maps = {"attention": maps} if isinstance(maps, torch.Tensor) else dict(maps)
    arrays = {name: np.asarray(m, dtype=float) for name, m in maps.items()}
    t, h, w = next(iter(arrays.values())).shape
    positive = np.concatenate([a[a > 0] for a in arrays.values()] or [np.ones(1)])
    vmax = float(max(a.max() for a in arrays.values()))
    norm = LogNorm(vmin=max(float(positive.min()) if positive.size else 1e-6, vmax * 1e-4), vmax=vmax) if log and vmax > 0 else None
    fig = StaticFigure(figsize=(min(2 + 1.2 * t * w / max(h, 1), 18), 1.2 + 1.6 * len(arrays)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(arrays), 1))
    for ax, (name, array) in zip(axes, arrays.items()):
        strip = np.concatenate([array[i] for i in range(t)], axis=1)  # (H, T*W)
        image = ax.imshow(np.clip(strip, norm.vmin if norm else None, None) if norm else strip, norm=norm,
                          cmap="viridis", aspect="equal", interpolation="nearest")  # fmt: skip
        for boundary in range(1, t):
            ax.axvline(boundary * w - 0.5, color="white", linewidth=1.5)
        ax.set_xticks([i * w + (w - 1) / 2 for i in range(t)], [f"frame {i}" for i in range(t)], fontsize=8)
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention" + (" (log)" if norm else ""))
    if title:
        fig.suptitle(title)
    return fig
