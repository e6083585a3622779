"""Static figures of the analyses: knockout curves (Figs. 2-3), keyword frequencies (Fig. 4),
keywords over frames (Fig. 5), answer probability by layer (Fig. 9), patching heatmaps.

Every function returns a matplotlib ``Figure`` (shown inline in Jupyter; ``fig.savefig("x.png")``
or ``"x.svg"``). Figures are built without pyplot, so nothing global is touched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hooked_video.analysis.flow import summarize
from hooked_video.analysis.lens import KeywordFrequencies, LensResult, first_subtokens
from hooked_video.viz.html import StaticFigure

LINESTYLES = ("-", "--", ":", "-.")
#: The smallest y-range of a relative-change panel, in percentage points.
MIN_SPAN = 2.0


def _as_models(data) -> dict[str, pd.DataFrame]:
    return {"": data} if isinstance(data, pd.DataFrame) else dict(data)


def knockout_curves(data: pd.DataFrame | Mapping[str, pd.DataFrame], value: str = "rel_change", targets: Sequence[str] | None = None,
                    tasks: Sequence[str] | None = None, pool_tasks: bool = False, n_boot: int = 1000, seed: int = 0) -> Figure:  # fmt: skip
    """Mean relative change per layer with bootstrap 95% bands: one row of panels per task (the
    paper never pools tasks; ``pool_tasks=True`` does), one panel per target, one colour per
    condition, one line style per model (``{"image": df1, "video-FT": df2}``; the sweeps may
    cover different targets); each column's legend is in its first panel with lines. Layers are
    drawn at x = layer + 1 as in the paper; a relative-change panel spans at least ``MIN_SPAN``
    (2) percentage points, so that noise stays flat."""
    models = _as_models(data)
    frames = [df for df in models.values() if len(df)]
    all_targets = list(dict.fromkeys(t for df in frames for t in df.target))
    targets = list(targets) if targets else all_targets
    all_tasks = ["all tasks"] if pool_tasks else sorted({t for df in frames for t in df.task}) or ["all tasks"]
    tasks = list(tasks) if tasks else all_tasks
    keys = ["target", "condition", "layer"] if pool_tasks else ["task", "target", "condition", "layer"]
    summaries = {name: summarize(df, value=value, by=keys, n_boot=n_boot, seed=seed) if len(df) else None
                 for name, df in models.items()}  # fmt: skip
    styles = dict(zip(summaries, LINESTYLES * 4))
    fig = StaticFigure(figsize=(4.2 * max(len(targets), 1), 3.4 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), max(len(targets), 1), squeeze=False)
    for column, target in enumerate(targets):
        # one colour per condition in every row of the column, named once, in its first panel
        lines = {(name, condition): None for name, summary in summaries.items() if summary is not None
                 for condition in summary.condition[summary.target == target]}  # fmt: skip
        colours = {condition: f"C{i}" for i, condition in enumerate(dict.fromkeys(c for _, c in lines))}
        for row, task in enumerate(tasks):
            ax = axes[row, column]
            for name, summary in summaries.items():
                if summary is None:
                    continue
                panel = summary[summary.target == target] if pool_tasks else summary[(summary.target == target) & (summary.task == task)]
                for condition, curve in panel.groupby("condition", sort=False):
                    x = curve.layer.to_numpy() + 1
                    lines[name, condition] = ax.plot(x, curve["mean"], styles[name], color=colours[condition],
                                                     label=f"{condition} ({name})" if name else condition, linewidth=1.6)[0]  # fmt: skip
                    ax.fill_between(x, curve.ci_low, curve.ci_high, color=colours[condition], alpha=0.15, linewidth=0)
            _finish_panel(ax, value, target if len(tasks) == 1 and pool_tasks else f"{task}: {target}")
            if not ax.lines[1:]:  # only the zero line
                ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", color="grey")
        shown = [line for line in lines.values() if line is not None]
        if shown:
            next(ax for ax in axes[:, column] if ax.lines[1:]).legend(handles=shown, fontsize=7)
    return fig


def _finish_panel(ax, value: str, title: str) -> None:
    """Zero line, y range (a relative change spans at least ``MIN_SPAN``), title and labels."""
    ax.axhline(0, color="grey", linewidth=0.8)
    if value == "rel_change":  # noise of a few thousandths of a percent is not drawn as a deep dip
        low, high = ax.get_ylim()
        if high - low < MIN_SPAN:
            middle = (high + low) / 2
            ax.set_ylim(middle - MIN_SPAN / 2, middle + MIN_SPAN / 2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layer (1-based)")
    ax.set_ylabel("relative change of P(answer) (%)" if value == "rel_change" else value)


def keyword_bars(frequencies: KeywordFrequencies | Mapping[str, KeywordFrequencies], title: str = "") -> Figure:
    """Average normalised keyword frequency per layer bin, one bar group per keyword set."""
    groups = {"keywords": frequencies} if isinstance(frequencies, KeywordFrequencies) else dict(frequencies)
    bins = list(next(iter(groups.values())).average.index)
    fig = StaticFigure(figsize=(1.2 + 0.9 * len(bins) * max(1, len(groups) / 2), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(groups)
    for i, (name, kf) in enumerate(groups.items()):
        values = kf.average.reindex(bins).fillna(0).to_numpy()
        n_words = len(kf.raw) - 1
        ax.bar(np.arange(len(bins)) + (i - (len(groups) - 1) / 2) * width, values, width,
               label=f"{name} ({n_words} word{'s' if n_words != 1 else ''})")  # fmt: skip
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("layers")
    ax.set_ylabel("normalised frequency")
    ax.legend(fontsize=8)
    ax.set_title(title or "keywords among logit-lens top-1 tokens of video positions")
    return fig


def keywords_on_frames(result: LensResult, frames: np.ndarray, keywords: Sequence[str] | Mapping[str, Sequence[str]],
                       tokenizer, layer: int, max_frames: int = 8) -> Figure:  # fmt: skip
    """Video positions whose lens top-1 token is a keyword, written at their (h, w) cell over
    the frame they come from (one panel per temporal slot; its first input frame is shown)."""
    groups = {"keywords": keywords} if not isinstance(keywords, Mapping) else dict(keywords)
    hits = {hit: (name, f"C{i}") for i, (name, words) in enumerate(groups.items())
            for first in first_subtokens(tokenizer, words).values() for hit in first}  # fmt: skip
    tm = result.token_map
    t_slots, grid_h, grid_w = tm.grid_shape
    shown = min(t_slots, max_frames)
    fig = StaticFigure(figsize=(2.4 * shown, 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, shown, squeeze=False)[0])
    tokens = [token.replace("\u2581", " ").replace("\u0120", " ").strip() for token in result.tokens(layer)]
    cells = tm.cell[result.positions]
    frames = np.asarray(frames)
    for slot, ax in enumerate(axes):
        image = frames[min(tm.input_frames(slot)[0], len(frames) - 1)]
        ax.imshow(image, extent=(0, grid_w, grid_h, 0), interpolation="nearest")
        for (t, h, w), token in zip(cells.tolist(), tokens):
            if t == slot and token in hits:
                ax.text(w + 0.5, h + 0.5, token, color="white", fontsize=7, ha="center", va="center",
                        bbox=dict(facecolor=hits[token][1], alpha=0.75, pad=1, linewidth=0))  # fmt: skip
        ax.set_title(f"frame {slot}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"lens ({result.variant}) layer {layer}: keywords at their cells", fontsize=9)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=f"C{i}", label=name) for i, name in enumerate(groups)], loc="outside lower center",
               ncols=len(groups), fontsize=8, frameon=False)  # fmt: skip
    return fig


def answer_probability_plot(df: pd.DataFrame, title: str = "", by_task: bool = False) -> Figure:
    """P(true letter) and P(each false letter) per layer (mean over samples, with min-max band
    when several samples are given), from ``lens.answer_probability_by_layer`` rows; one line
    style per norm mode present; ``by_task=True`` draws one panel per task (the paper's layout)."""
    groups = list(df.groupby("task", sort=True)) if by_task and "task" in df and len(df) else [("", df)]
    fig = StaticFigure(figsize=(5.5 * len(groups), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
    norms = list(dict.fromkeys(df["norm"])) if "norm" in df else ["released"]
    for ax, (task, rows_of_task) in zip(axes, groups):
        keys = ["is_true", "norm"] if "norm" in rows_of_task else ["is_true"]
        for key, rows in rows_of_task.groupby(keys):
            is_true, norm = (key[0], key[1]) if len(keys) == 2 else (key[0] if isinstance(key, tuple) else key, "released")
            stats = rows.groupby("layer").prob.agg(["mean", "min", "max"])
            x = stats.index.to_numpy() + 1
            colour = "C2" if is_true else "C3"
            suffix = f" (norm: {norm})" if len(norms) > 1 else ""
            ax.plot(x, stats["mean"], LINESTYLES[norms.index(norm) % len(LINESTYLES)], color=colour,
                    label=f"{'true' if is_true else 'false'} option{suffix}")  # fmt: skip
            if "sample_id" in rows and rows.sample_id.nunique() > 1:
                ax.fill_between(x, stats["min"], stats["max"], color=colour, alpha=0.12, linewidth=0)
        ax.set_xlabel("layer (1-based)")
        ax.set_ylabel("probability of the option letter")
        ax.set_title(task or title or f"answer probability by layer (norm: {', '.join(map(str, norms))})", fontsize=10)
        ax.legend(fontsize=8)
    return fig


def patching_heatmap(result, normalized: bool = True, title: str = "") -> Figure:
    """Layer x position-set heatmap of a ``PatchingResult`` (normalised: 0 corrupted, 1 clean)."""
    values = result.normalized() if normalized else result.values
    values = values.numpy()
    fig = StaticFigure(figsize=(max(4, 0.45 * values.shape[1] + 2), max(3, 0.3 * values.shape[0] + 1.2)), layout="constrained")
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(values))) or 1.0
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower", interpolation="nearest")
    labels = [str(label) for label in result.labels]
    step = max(1, len(labels) // 24)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=60, fontsize=7)
    ax.set_yticks(range(len(result.layers)), [str(l) for l in result.layers], fontsize=7)
    ax.set_xlabel("patched positions")
    ax.set_ylabel(f"layer ({result.component})")
    fig.colorbar(image, ax=ax, label="restored fraction" if normalized else "metric")
    ax.set_title(title or "activation patching, clean -> corrupted")
    return fig
