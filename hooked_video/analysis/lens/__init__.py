"""The logit lens over video tokens, keyword frequencies and answer probability by layer.

    result = lens.logit_lens(model, prompt, variant="unembed")        # one prompt
    lens.answer_probability_by_layer(model, prompt, norm="released")
    run = lens.run(model, samples, variant="unembed", norm="released")  # a dataset, select="correct"
    run.keyword_frequencies({"spatial": [...], "temporal": [...]}, model.tokenizer)
"""

from hooked_video.analysis.lens.answer import NORMS, answer_probability_by_layer
from hooked_video.analysis.lens.core import VARIANTS, LensResult, logit_lens, project
from hooked_video.analysis.lens.keywords import (
    PAPER_KEYWORDS,
    KeywordFrequencies,
    first_subtokens,
    keyword_frequencies,
    keyword_table,
    layer_bins,
    select_results,
    top1_counts,
)
from hooked_video.analysis.lens.run import LensRun, run

__all__ = [
    "KeywordFrequencies", "LensResult", "LensRun", "NORMS", "PAPER_KEYWORDS", "VARIANTS", "answer_probability_by_layer",
    "first_subtokens", "keyword_frequencies", "keyword_table", "layer_bins", "logit_lens", "project", "run",
    "select_results", "top1_counts",
]  # fmt: skip
