"""Keyword analysis over logit-lens results: how often spatial and temporal keywords are the
top-1 token of video positions, per layer bin (the paper's Fig. 4)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from hooked_video.analysis.flow.records import check_selection
from hooked_video.analysis.lens.core import LensResult

#: The keyword bags of the paper's logit-lens figure (Action Sequence): object nouns (spatial)
#: and action verbs and particles (temporal).
PAPER_KEYWORDS = {
    "Action Sequence": {
        "spatial": ["bag", "bed", "blanket", "book", "box", "cabinet", "camera", "clothes", "cup", "glass", "bottle",
                    "dish", "door", "floor", "food", "laptop", "paper", "person", "phone", "sandwich", "table"],
        "temporal": ["eat", "close", "do", "down", "drink", "hold", "on", "open", "put", "sit", "throw", "tidy", "take", "up"],
    },
}  # fmt: skip


@dataclass
class KeywordFrequencies:
    """Counts of keyword tokens among lens top-1 tokens, per layer bin.

    Attributes:
        raw: counts, rows = keywords (first sub-tokens) kept by the min-count filter plus "ALL"
            (their sum), columns = layer bins labelled 1-based ("1-5", "6-10", ...).
        normalized: each row of ``raw`` divided by its sum.
        average: mean of the normalised keyword rows (the bars of the paper's Fig. 4).
        dropped: keywords removed by the min-count filter.
    """

    raw: pd.DataFrame
    normalized: pd.DataFrame
    average: pd.Series
    dropped: list[str]


def _first_subtoken(tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:1]).strip()


def first_subtokens(tokenizer, keywords: Sequence[str]) -> dict[str, set[str]]:
    """Each keyword's first sub-token (decoded, stripped) -> the strings that count as a hit.

    A keyword is tokenised alone and after a space (byte-level BPE tokenisers such as Qwen's
    split " walking" and "walking" differently; inside a sentence the spaced form is the one
    seen), and both first sub-tokens count for it.
    """
    table: dict[str, set[str]] = {}
    for keyword in keywords:
        first = _first_subtoken(tokenizer, keyword)
        if first:
            table.setdefault(first, set()).update({first} | ({_first_subtoken(tokenizer, " " + keyword)} - {""}))
    return dict(sorted(table.items()))


def layer_bins(n_layers: int, bin_size: int = 5, overlapping: bool = False) -> dict[str, range]:
    """Label -> layers of each bin. ``overlapping=True`` reproduces the released code, whose
    bins also take the next bin's first layer (a pandas label slice includes both ends)."""
    bins = {}
    for start in range(0, n_layers, bin_size):
        stop = min(start + bin_size + (1 if overlapping else 0), n_layers)
        bins[f"{start + 1}-{min(start + bin_size, n_layers)}"] = range(start, stop)
    return bins


def top1_counts(results: Sequence[LensResult]) -> list[Counter]:
    """Per lens entry, how often each top-1 token string occurs over all results."""
    n_layers = results[0].n_layers
    counters = [Counter() for _ in range(n_layers)]
    for result in results:
        for layer in range(n_layers):
            counters[layer].update(result.tokens(layer))
    return counters


def select_results(results: Sequence[LensResult], select: str) -> list[LensResult]:
    """The lens results of correctly answered ("correct"), failed ("wrong") or "all" samples."""
    check_selection(select)
    if select == "all":
        return list(results)
    unknown = [i for i, r in enumerate(results) if r.correct is None]
    if unknown:
        raise ValueError(f"lens results {unknown[:5]} carry no correctness (their prompts have no answer); "
                         "pass select='all' or build prompts with answer=...")  # fmt: skip
    return [r for r in results if r.correct == (select == "correct")]


def keyword_frequencies(
    results: LensResult | Sequence[LensResult],
    keywords: Sequence[str] | Mapping[str, Sequence[str]],
    tokenizer,
    bin_size: int = 5,
    overlapping_bins: bool = False,
    min_count: int = 100,
    select: str = "correct",
) -> KeywordFrequencies | dict[str, KeywordFrequencies]:
    """Keyword frequencies over lens results (one per sample).

    Args:
        keywords: a list of words, or ``{"spatial": [...], "temporal": [...]}`` for one table per group.
        tokenizer: reduces each keyword to its first sub-token; top-1 tokens are compared as
            decoded strings with SentencePiece/GPT-2 space markers removed ("▁open" counts as "open").
        bin_size: layers per bin. overlapping_bins: the released code's off-by-one bins.
        min_count: keywords with fewer hits over all bins are dropped.
        select: "correct" (the released analysis' default: samples the model answers
            correctly), "wrong" or "all".
    """
    results = select_results([results] if isinstance(results, LensResult) else list(results), select)
    if not results:
        raise ValueError(f"no lens result is selected by select={select!r}; try select='all'")
    return keyword_table(top1_counts(results), keywords, tokenizer, bin_size, overlapping_bins, min_count)


def keyword_table(
    counts: Sequence[Counter],
    keywords: Sequence[str] | Mapping[str, Sequence[str]],
    tokenizer,
    bin_size: int = 5,
    overlapping_bins: bool = False,
    min_count: int = 100,
) -> KeywordFrequencies | dict[str, KeywordFrequencies]:
    """``keyword_frequencies`` from per-layer counts of top-1 token strings (see ``top1_counts``)."""
    if isinstance(keywords, Mapping):
        return {group: keyword_table(counts, words, tokenizer, bin_size, overlapping_bins, min_count)
                for group, words in keywords.items()}  # fmt: skip
    counters = [Counter({_strip_space_marker(k): v for k, v in c.items()}) for c in counts]
    words = first_subtokens(tokenizer, keywords)
    bins = layer_bins(len(counters), bin_size, overlapping_bins)
    raw = pd.DataFrame({label: [sum(counters[l][hit] for l in layers for hit in hits) for hits in words.values()]
                        for label, layers in bins.items()}, index=pd.Index(list(words), name="keyword"), dtype=float)  # fmt: skip
    keep = raw.sum(axis=1) >= min_count
    dropped = raw.index[~keep].tolist()
    raw = raw[keep]
    raw.loc["ALL"] = raw.sum(axis=0)
    normalized = raw.div(raw.sum(axis=1).where(lambda s: s > 0), axis=0)
    return KeywordFrequencies(raw, normalized, normalized.drop("ALL").mean(axis=0), dropped)


def _strip_space_marker(token: str) -> str:
    return token.replace("\u2581", " ").replace("\u0120", " ").strip()


