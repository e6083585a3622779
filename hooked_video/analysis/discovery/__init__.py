"""Pathway discovery: the smallest faithful pathway of a model, found from data (``search``), its
faithfulness-size curve against random pruning and the preset (``curve``), scored exactly
(``scoring``)."""

from hooked_video.analysis.discovery.curve import RANDOM_POINTS, resolve_preset
from hooked_video.analysis.discovery.scoring import Scorer
from hooked_video.analysis.discovery.search import (
    BY,
    METHODS,
    attribution_ranking,
    FLOW_NAMES,
    PAPER_FLOWS,
    Discovery,
    discover,
    discover_each,
    search,
    table,
)

__all__ = ["BY", "FLOW_NAMES", "METHODS", "attribution_ranking", "PAPER_FLOWS", "RANDOM_POINTS", "Discovery", "Scorer", "discover", "discover_each",
           "resolve_preset", "search", "table"]  # fmt: skip
