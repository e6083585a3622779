"""Attention over video prompts: frame-labelled CircuitsVis views and frame-grid heatmaps.

A thousand video tokens do not fit an attention view, so video tokens can be grouped per frame
(or per grid row of a frame): a group's column is the attention mass its tokens receive (sum
over keys), its row the mean distribution of its queries, so every row still sums to one.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from hooked_video.runtime import attention
from hooked_video.analysis import knockout as ko
from hooked_video.runtime.capture import capture
from hooked_video.model.tokens import TokenMap
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


# ----- attention rows in linear memory --------------------------------------------------------
def attention_rows(model, prompt, queries: Sequence[int] | torch.Tensor, layers: Sequence[int],
                   blocked: dict[int, ko.EdgeSet | torch.Tensor] | None = None) -> dict[int, Float[torch.Tensor, "head q N"]]:  # fmt: skip
    """Attention patterns of the ``queries`` rows in ``layers``, from the rotated queries and keys
    of one fast-path forward: memory grows with N, not N^2 (no layer's full pattern exists).

    ``blocked``: {layer: EdgeSet or blocked (N, N) mask} knocked out in that forward
    (``attention.edge_masks``); a knocked-out layer's own rows exclude its blocked keys, as the
    knockout's softmax does.
    """
    queries = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
    blocked = {l: e if isinstance(e, ko.EdgeSet) else ko.EdgeSet(e.bool()) for l, e in (blocked or {}).items()}
    names = {l: (f"blocks.{l}.attn.hook_rot_q", f"blocks.{l}.attn.hook_rot_k") for l in layers}
    reduce = {}
    for q_name, k_name in names.values():
        reduce[q_name] = lambda act: act[queries.to(act.device)].float()  # (q, heads, d_head)
        reduce[k_name] = lambda act: act.float()  # (N, kv_heads, d_head)
    context = attention.edge_masks(blocked) if blocked else contextlib.nullcontext()
    with context:
        acts, _ = capture(model, prompt, [n for pair in names.values() for n in pair], reduce)
    n = prompt.n_positions
    rows = {}
    for layer, (q_name, k_name) in names.items():
        q, k = acts[q_name].transpose(0, 1), acts[k_name].transpose(0, 1)  # (heads, q, d), (kv, N, d)
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        scaling = getattr(model.blocks[layer].attn.original_component, "scaling", q.shape[-1] ** -0.5)
        scores = q @ k.transpose(-1, -2) * scaling
        allowed = torch.arange(n, device=scores.device)[None, :] <= queries.to(scores.device)[:, None]
        if layer in blocked:
            allowed = allowed & ~blocked[layer].rows_at(n, queries.tolist()).to(scores.device)
        rows[layer] = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return rows


# ----- frame-grid heatmap (Fig. 6) ---------------------------------------------------------------
def attention_to_video(model, prompt, queries: Sequence[int] | torch.Tensor, layers: Sequence[int], heads: str = "mean",
                       fwd_hooks=(), knockout=None, knockout_layers: Sequence[int] | None = None) -> Float[torch.Tensor, "T H W"]:  # fmt: skip
    """Attention from ``queries`` to every video token on the (T, H, W) grid: heads averaged (or
    max), then averaged over queries and layers.

    ``knockout`` (an EdgeSet, or "cross-frame") is blocked in ``knockout_layers`` (default: all)
    in linear memory. With ``fwd_hooks`` (any TransformerLens hooks, e.g. ``knockout.hooks``)
    the patterns are read from ``hook_pattern`` instead (one layer's full pattern at a time).
    """
    per_layer = video_attention_by_layer(model, prompt, queries, layers, heads, fwd_hooks, knockout, knockout_layers)
    return per_layer.mean(0)


def video_attention_by_layer(model, prompt, queries, layers: Sequence[int], heads: str = "mean", fwd_hooks=(), knockout=None,
                             knockout_layers: Sequence[int] | None = None) -> Float[torch.Tensor, "layer T H W"]:  # fmt: skip
    """``attention_to_video`` per layer: (len(layers), T, H, W)."""
    if heads not in ("mean", "max"):
        raise ValueError("heads must be 'mean' or 'max'")
    tm = prompt.token_map
    queries = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
    grid = tm.grid.reshape(-1)
    keys = grid[grid >= 0]

    def pool(rows):  # (H, q, N) -> (n_video,)
        rows = rows[:, :, keys.to(rows.device)]
        rows = rows.mean(0) if heads == "mean" else rows.amax(0)
        return rows.mean(0)

    layers = list(layers)
    if fwd_hooks:
        if knockout is not None:
            raise ValueError("give the knockout either as knockout= or inside fwd_hooks, not both")
        per_layer = capture_patterns(model, prompt, layers, lambda p: pool(p[:, queries.to(p.device)]), fwd_hooks)
    else:
        edges = _knockout_edges(knockout, tm)
        blocked_layers = range(model.cfg.n_layers) if knockout_layers is None else knockout_layers
        blocked = {l: edges for l in blocked_layers} if edges is not None else None
        per_layer = {l: pool(r).cpu() for l, r in attention_rows(model, prompt, queries, layers, blocked).items()}
    pooled = torch.stack([per_layer[l] for l in layers])
    out = pooled.new_full((len(layers), len(grid)), float("nan"))  # NaN: a cell without a token
    out[:, grid >= 0] = pooled
    return out.reshape(len(layers), *tm.grid_shape)


def _knockout_edges(knockout, tm):
    if knockout is None or isinstance(knockout, ko.EdgeSet):
        return knockout
    if knockout == "cross-frame":
        return ko.cross_frame(tm)
    raise ValueError(f"knockout must be None, 'cross-frame' or an EdgeSet, got {knockout!r}")


def keyword_positions(prompt, keyword: str) -> torch.Tensor:
    """Positions of the first run of question tokens (at most 4) that spells ``keyword``
    (space markers and case ignored)."""
    tm = prompt.token_map
    span = tm.question.tolist()
    text = [t.replace("\u2581", "").replace("\u0120", "").strip().casefold() for t in prompt.str_tokens]
    target = keyword.strip().casefold()
    for length in range(1, 5):
        for start in range(len(span) - length + 1):
            run = span[start : start + length]
            if "".join(text[p] for p in run) == target:
                return torch.tensor(run)
    words = " ".join(prompt.str_tokens[p] for p in span)
    raise ValueError(f"keyword {keyword!r} is not among the question's tokens: {words}")


def attention_to_video_figure(model, prompt, keyword: str, layers: Sequence[int] = range(10, 20), knockout="cross-frame",
                              knockout_layers: Sequence[int] | None = None, heads: str = "mean", constant: float = 5e-5) -> Figure:  # fmt: skip
    """The paper's Fig. 6 in one call: attention from a question keyword to the video, baseline
    versus knockout, one band of grid rows per layer and one column block per frame, log10 scale
    (``log10(constant + attention)`` as the released figure).

    Args:
        keyword: a word of the question (its tokens' attention rows are averaged).
        layers: layers drawn (0-based; labelled 1-based as in the paper: range(10, 20) -> 11-20).
        knockout: "cross-frame" (default), an EdgeSet, or None (baseline only).
        knockout_layers: layers the knockout blocks (default: all, as the released script).
        heads: "mean" or "max" over heads.
    """
    queries = keyword_positions(prompt, keyword)
    maps = {"baseline": video_attention_by_layer(model, prompt, queries, layers, heads)}
    if knockout is not None:
        name = knockout if isinstance(knockout, str) else "knockout"
        maps[f"{name} knockout"] = video_attention_by_layer(model, prompt, queries, layers, heads, knockout=knockout,
                                                            knockout_layers=knockout_layers)  # fmt: skip
    layers = list(layers)
    t, h, w = prompt.token_map.grid_shape
    images = {name: np.log10(constant + m.numpy().transpose(0, 2, 1, 3).reshape(len(layers) * h, t * w)) for name, m in maps.items()}
    low, high = min(i.min() for i in images.values()), max(i.max() for i in images.values())
    fig = StaticFigure(figsize=(min(3 + 0.35 * t * w, 20) * len(images) / 1.6, 1.5 + 0.2 * len(layers) * h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(images)))
    for ax, (name, image) in zip(axes, images.items()):
        shown = ax.imshow(image, cmap="viridis", vmin=low, vmax=high, interpolation="nearest", aspect="auto")
        for boundary in range(1, t):
            ax.axvline(boundary * w - 0.5, color="white", linewidth=1.2)
        for boundary in range(1, len(layers)):
            ax.axhline(boundary * h - 0.5, color="white", linewidth=0.6)
        ax.set_xticks([i * w + (w - 1) / 2 for i in range(t)], [str(i + 1) for i in range(t)], fontsize=7)
        ax.set_yticks([i * h + (h - 1) / 2 for i in range(len(layers))], [str(l + 1) for l in layers], fontsize=7)
        ax.set_xlabel("frame")
        ax.set_ylabel("layer (1-based)")
        ax.set_title(name, fontsize=10)
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label=f"log10({constant:g} + attention)")
    fig.suptitle(f"attention from {keyword!r} to the video ({heads} over heads)", fontsize=10)
    return fig


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
