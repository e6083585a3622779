"""Figures of attribution estimates (``attribution.attribute``) where they live: a frame x frame
map per band of layers, cells drawn on their frames, question tokens in prompt order.

Each takes the rows of one granularity (mean over the samples present, all heads) and returns a
matplotlib ``Figure``. Values are estimated relative changes of P(answer), percent.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hooked_video.viz.html import StaticFigure


def _rows(df: pd.DataFrame, target: str) -> pd.DataFrame:
    rows = df[(df.target == target) & (df.head_index == -1)] if "head_index" in df else df[df.target == target]
    if rows.empty:
        raise ValueError(f"no {target!r} rows: pass the result of attribution.attribute(..., granularity={target!r})")
    return rows


def layer_bands(n_layers: int, n_bands: int = 4) -> list[range]:
    """``n_bands`` consecutive, nearly equal ranges of layers."""
    edges = np.linspace(0, n_layers, min(n_bands, n_layers) + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def frame_pair_map(df: pd.DataFrame, bands: Sequence[range] | None = None, title: str = "") -> Figure:
    """Frame i -/-> frame j (and -> question) per band of layers: rows are the reading frame (the
    question last), columns the frame read; each cell the mean estimate over the band's swept layers."""
    rows = _rows(df, "frame-pairs")
    n_layers = int(rows.layer.max()) + 1
    bands = list(bands) if bands is not None else layer_bands(n_layers)
    n_frames = int(max(rows.source_frame.max(), rows.target_frame.max())) + 1
    readers = rows.target_frame.where(rows.target_frame >= 0, n_frames)  # the question after the frames
    fig = StaticFigure(figsize=(2.9 * len(bands) + 0.8, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(bands), squeeze=False)[0])
    maps = []
    for band in bands:
        grid = np.full((n_frames + 1, n_frames), np.nan)
        in_band = rows[rows.layer.isin(list(band))]
        means = in_band.groupby([readers[in_band.index], in_band.source_frame]).estimate.mean()
        for (reader, source), value in means.items():
            grid[int(reader), int(source)] = value
        maps.append(grid)
    limit = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0 for m in maps) or 1.0
    for ax, band, grid in zip(axes, bands, maps):
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(f"layers {band.start + 1}-{band.stop}", fontsize=9)
        ax.set_xticks(range(n_frames), [str(i) for i in range(n_frames)], fontsize=7)
        ax.set_yticks(range(n_frames + 1), [*map(str, range(n_frames)), "Q"], fontsize=7)
        ax.set_xlabel("frame read (keys)", fontsize=8)
    axes[0].set_ylabel("reading frame (queries)", fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="estimated change of P(answer), %")
    fig.suptitle(title or "attribution: frame i -/-> frame j, by band of layers", fontsize=9)
    return fig


def cells_on_frames(df: pd.DataFrame, frames: np.ndarray, layers: Sequence[int] | None = None, max_frames: int = 8,
                    title: str = "") -> Figure:  # fmt: skip
    """Each video cell's estimated effect on the answer (cell -/-> last), summed over ``layers``
    (default: all swept), drawn over its frame."""
    rows = _rows(df, "cells")
    if layers is not None:
        rows = rows[rows.layer.isin(list(layers))]
    cells = rows.groupby(["source_frame", "source_row", "source_col"]).estimate.mean()
    shape = [int(cells.index.get_level_values(i).max()) + 1 for i in range(3)]
    grid = np.zeros(shape)
    for (t, h, w), value in cells.items():
        grid[t, h, w] = value
    shown = min(shape[0], max_frames)
    frames = np.asarray(frames)
    fig = StaticFigure(figsize=(2.4 * shown + 0.8, 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, shown, squeeze=False)[0])
    limit = float(np.abs(grid).max()) or 1.0
    for t, ax in enumerate(axes):
        image = frames[min(t * max(1, len(frames) // shape[0]), len(frames) - 1)]
        ax.imshow(image, extent=(0, shape[2], shape[1], 0), interpolation="nearest")
        heat = ax.imshow(grid[t], cmap="RdBu", vmin=-limit, vmax=limit, alpha=0.6, extent=(0, shape[2], shape[1], 0))
        ax.set_title(f"frame {t}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(heat, ax=list(axes), shrink=0.8, label="estimated change of P(answer), %")
    fig.suptitle(title or "attribution: each video cell -/-> last", fontsize=9)
    return fig


def token_bars(df: pd.DataFrame, layers: Sequence[int] | None = None, title: str = "") -> Figure:
    """Each question / option token's estimated effect (token -/-> last), in prompt order."""
    rows = _rows(df, "tokens")
    if layers is not None:
        rows = rows[rows.layer.isin(list(layers))]
    means = rows.groupby(["source_position", "condition"]).estimate.mean().reset_index().sort_values("source_position")
    labels = [c.split(":", 1)[1].rsplit("->", 1)[0] for c in means.condition]
    fig = StaticFigure(figsize=(max(4.0, 0.28 * len(labels)), 3.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(labels)), means.estimate, color=["C3" if v < 0 else "C0" for v in means.estimate])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylabel("estimated change of P(answer), %", fontsize=8)
    ax.set_title(title or "attribution: each question token -/-> last", fontsize=9)
    return fig
