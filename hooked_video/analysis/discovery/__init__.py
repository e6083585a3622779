"""Pathway discovery: the smallest faithful pathway of a model, found from data (``search``: ``discover``, ``greedy``), its
faithfulness-size curve against random pruning and the preset (``curve``), finer edge groups
inside it (``refine``: frame pairs, question tokens, video cells; ``groups``: those edge groups and
``RefinedPathway``, a pathway with some of them closed), the curve over every edge down to one per
row (``ranked``: ``size_curve`` over ``blocks``' groups, ``BlockPathway``), scored exactly (``scoring``)."""

from hooked_video.analysis.discovery.curve import RANDOM_POINTS, resolve_preset
from hooked_video.analysis.discovery.blocks import BlockPathway
from hooked_video.analysis.discovery.groups import GRANULARITIES, RefinedPathway
from hooked_video.analysis.discovery.ranked import SIZES, SizeCurve, rank_groups, size_curve
from hooked_video.analysis.discovery.refine import Refinement, refine
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
    greedy,
    table,
)

__all__ = ["BY", "BlockPathway", "SIZES", "SizeCurve", "rank_groups", "size_curve", "GRANULARITIES", "RefinedPathway", "Refinement", "refine", "FLOW_NAMES", "METHODS", "attribution_ranking", "PAPER_FLOWS", "RANDOM_POINTS", "Discovery", "Scorer", "discover", "discover_each",
           "greedy", "resolve_preset", "table"]  # fmt: skip
