"""The faithfulness-size curve of a pathway search: what a discovered pathway keeps against
random pruning of the same size and the preset, as a function of the attention edges kept."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from hooked_video.viz.html import StaticFigure

PANELS = {"accuracy": "accuracy", "kept": "P(full model's top token) kept (%)"}


def faithfulness_curve(found, title: str = "", refined=(), ranked=None) -> Figure:
    """Two panels over the share of attention edges kept (%): accuracy, and the full model's
    top-token probability kept (100 + mean relative change). ``found`` is a ``Discovery`` (its
    ``curve``, else its ``path``), a ``SizeCurve`` (``discovery.size_curve``) or such a table. The
    discovered path is a line with its found pathway starred, random pruning the mean over seeds
    with the seeds' range shaded, the preset one marker, the full model's accuracy a dotted line.
    ``refined``: ``discovery.refine`` results (one or several), each drawn as the line of its
    faithful points below the pathway it refined. ``ranked``: a ``SizeCurve`` drawn on the same
    axes (its ranked pathways a line, the smallest that keeps the accuracy starred). With points
    below 5% of the edges the axis is logarithmic."""
    if hasattr(found, "ranking"):  # a SizeCurve alone
        found, ranked = found.table, found
    table = found if isinstance(found, pd.DataFrame) else (found.curve if found.curve is not None else found.path)
    full_accuracy = table.attrs.get("full_accuracy", getattr(found, "full_accuracy", None))
    if "pathway" not in table:
        table = table.assign(pathway="discovered")
    table = table.assign(x=table.retention * 100, kept=100 + table.rel_change)
    fig = StaticFigure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (value, label) in zip(axes, PANELS.items()):
        path = table[table.pathway == "discovered"].sort_values("x")
        if len(path):
            ax.plot(path.x, path[value], "-o", markersize=2.5, color="C0", label="discovered (path)")
        if not isinstance(found, pd.DataFrame) and found.step is not None:
            best = found.path.loc[found.step]
            y = best.accuracy if value == "accuracy" else 100 + best.rel_change
            ax.plot([best.retention * 100], [y], "*", markersize=13, color="C0", label="smallest faithful")
        if ranked is not None:
            _ranked_line(ax, ranked, value)
        random = table[table.pathway == "random"]
        if len(random):
            spread = random.groupby("x")[value].agg(["mean", "min", "max"]).sort_index()
            ax.plot(spread.index, spread["mean"], "--s", markersize=3, color="C1", label="random pruning (mean)")
            ax.fill_between(spread.index, spread["min"], spread["max"], color="C1", alpha=0.2, linewidth=0)
        for i, finer in enumerate([refined] if hasattr(refined, "path") else refined):
            kept = finer.path[finer.path.faithful].sort_values("n_closed")
            y = kept.accuracy if value == "accuracy" else 100 + kept.rel_change
            ax.plot(kept.retention * 100, y, "-^", markersize=4, color=f"C{3 + i}", label=f"refined: {finer.granularity}")
        preset = table[table.pathway == "preset"]
        if len(preset):
            ax.plot(preset.x, preset[value], "D", markersize=7, color="C2", label="preset")
        if value == "accuracy" and full_accuracy is not None:
            ax.axhline(full_accuracy, color="grey", linestyle=":", linewidth=1, label="full model")
        if ranked is not None and ranked.table.retention.min() < 0.05:
            ax.set_xscale("log")
        ax.set_xlabel("attention edges kept (%)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _ranked_line(ax, curve, value: str) -> None:
    """A SizeCurve's ranked pathways as a line, the smallest keeping the accuracy starred."""
    points = curve.table[curve.table.pathway == "ranked"].drop_duplicates("n_closed").sort_values("retention")
    y = points.accuracy if value == "accuracy" else 100 + points.rel_change
    ax.plot(points.retention * 100, y, "-v", markersize=3, color="C6", label="ranked block groups")
    if curve.smallest is not None:
        best = points[points.n_closed == len(curve.smallest.closed)].iloc[0]
        y = best.accuracy if value == "accuracy" else 100 + best.rel_change
        ax.plot([best.retention * 100], [y], "*", markersize=13, color="C6", label="smallest keeping the accuracy")
