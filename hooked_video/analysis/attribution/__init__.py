"""Attribution patching over video tokens: first-order (``method="atp"``) and integrated-gradients
(``"ig"``) estimates of what knocking out edge groups does, from a backward pass instead of one
knockout pass per row, in ``flow.sweep``'s schema, and their comparison with the exact rows.

    df = attribution.attribute(model, samples, window=9)
    attribution.compare(df, flow.sweep(model, samples, window=9))
"""

from hooked_video.analysis.attribution.compare import compare, sign_agreement, spearman, top_overlap
from hooked_video.analysis.attribution.gradients import PatternGradients, pattern_gradients
from hooked_video.analysis.attribution.groups import GRANULARITIES
from hooked_video.analysis.attribution.heads import head_knockouts
from hooked_video.analysis.attribution.run import METHODS, attribute

__all__ = ["GRANULARITIES", "METHODS", "PatternGradients", "attribute", "compare", "head_knockouts", "pattern_gradients",
           "sign_agreement", "spearman", "top_overlap"]  # fmt: skip
