"""Frame-aware figures for notebooks and reports.

Static figures are matplotlib ``Figure``s (``savefig`` to PNG or SVG); interactive ones are
``InteractiveFigure``s (CircuitsVis, ``save`` to a standalone HTML file).
"""

from hooked_video.viz.attention import (
    aggregate_pattern,
    attention_heads,
    attention_pattern,
    attention_rows,
    attention_to_video,
    attention_to_video_figure,
    frame_grid_heatmap,
    keyword_positions,
    token_groups,
    token_labels,
    video_attention_by_layer,
)
from hooked_video.viz.attribution import cells_on_frames, frame_pair_map, token_bars
from hooked_video.viz.blueprint import flow_blueprint
from hooked_video.viz.html import InteractiveFigure
from hooked_video.viz.pathways import faithfulness_curve
from hooked_video.viz.plots import (
    answer_probability_plot,
    keyword_bars,
    keywords_on_frames,
    knockout_curves,
    patching_heatmap,
)

__all__ = [
    "InteractiveFigure", "aggregate_pattern", "answer_probability_plot", "attention_heads", "attention_pattern",
    "cells_on_frames", "faithfulness_curve", "frame_pair_map", "token_bars",
    "attention_rows", "attention_to_video", "attention_to_video_figure", "flow_blueprint", "frame_grid_heatmap",
    "keyword_bars", "keyword_positions", "keywords_on_frames", "knockout_curves", "patching_heatmap", "token_groups",
    "token_labels", "video_attention_by_layer",
]  # fmt: skip
