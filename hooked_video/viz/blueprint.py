"""A flow blueprint drawn from a sweep: in which layers each pathway matters (the idea of the
paper's Fig. 1, computed from data instead of drawn by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from hooked_video.analysis.pathways import SWEEP_CONDITIONS, PathwaySpec
from hooked_video.viz.html import StaticFigure

LANES = {"inter": "frames <-> frames\n(cross-frame)", "v2q": "video -> question", "q2l": "question -> last"}


def flow_blueprint(df: pd.DataFrame, threshold: float = 10.0, title: str = "") -> Figure:
    """Three lanes (cross-frame, video -> question, question -> last) over the layers.

    Each lane's strip is the mean drop of the answer's probability when that pathway is knocked
    out around the layer (darker = more critical); the outlined bar is the range where the drop
    exceeds ``threshold`` percent (``PathwaySpec.from_sweep``), and arrows join the ranges in
    the order information flows. Needs a sweep with the cross-frame and vql-to-ql targets.
    """
    spec = PathwaySpec.from_sweep(df, threshold=threshold)
    n_layers = spec.n_layers
    fig = StaticFigure(figsize=(max(6, 0.28 * n_layers + 3), 3.2), layout="constrained")
    ax = fig.subplots()
    strips = []
    for family, (target, condition) in SWEEP_CONDITIONS.items():
        rows = df[(df.target == target) & (df.condition == condition)]
        drop = (-rows.groupby("layer").rel_change.mean()).reindex(range(n_layers)).fillna(0).clip(lower=0)
        strips.append(drop.to_numpy())
    strips = np.array(strips)
    vmax = max(float(strips.max()), threshold, 1e-9)
    ax.imshow(strips, cmap="Blues", vmin=0, vmax=vmax, aspect="auto", extent=(0.5, n_layers + 0.5, 2.5, -0.5), alpha=0.9)
    centres = []
    for lane, family in enumerate(SWEEP_CONDITIONS):
        r = getattr(spec, family)
        if r is None:
            ax.text(n_layers + 0.8, lane, "no critical layer", va="center", fontsize=8, color="grey")
            centres.append(None)
            continue
        start, stop = r[0] + 1, r[1] + 1  # paper plots layer l at x = l + 1
        ax.add_patch(FancyBboxPatch((start - 0.45, lane - 0.3), stop - start + 0.9, 0.6, boxstyle="round,pad=0.02",
                                    fill=False, edgecolor="C1", linewidth=2))  # fmt: skip
        ax.text(n_layers + 0.8, lane, f"layers {start}-{stop}", va="center", fontsize=8, color="C1")
        centres.append((start, stop, lane))
    for a, b in zip(centres, centres[1:]):
        if a and b:
            ax.add_patch(FancyArrowPatch((a[1], a[2] + 0.3), (max(b[0], a[0]), b[2] - 0.3), arrowstyle="-|>",
                                         mutation_scale=12, color="C1", linewidth=1.2))  # fmt: skip
    ax.set_yticks(range(3), [LANES[f] for f in SWEEP_CONDITIONS], fontsize=8)
    ax.set_xlim(0.5, n_layers + 0.5 + max(3, n_layers / 6))
    ax.set_xticks(range(1, n_layers + 1, max(1, n_layers // 16)))
    ax.set_xlabel("layer")
    ax.set_title(title or f"flow blueprint (critical: mean drop > {threshold:g}% of P(answer))", fontsize=10)
    return fig
